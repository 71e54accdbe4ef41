# FCMAE pre-training of ConvNeXt V2-Pico: the base recipe unchanged.
_base_ = './_base_/fcmae_in1k.py'

model = dict(arch='pico')
