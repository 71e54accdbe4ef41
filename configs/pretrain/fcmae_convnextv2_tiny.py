# FCMAE pre-training of ConvNeXt V2-Tiny: the base recipe unchanged.
_base_ = './_base_/fcmae_in1k.py'

model = dict(arch='tiny')
