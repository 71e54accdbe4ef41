# FCMAE pre-training of ConvNeXt V2-Base: the base recipe unchanged.
_base_ = './_base_/fcmae_in1k.py'

model = dict(arch='base')
