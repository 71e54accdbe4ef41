# FCMAE pre-training of ConvNeXt V2-Atto: the base recipe unchanged.
_base_ = './_base_/fcmae_in1k.py'

model = dict(arch='atto')
