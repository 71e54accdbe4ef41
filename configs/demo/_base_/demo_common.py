# What every demo config shares: the classes of the built-in demo data (backbones/runtime/demo_data.py draws them
# in this order) and their colours (RGB), also read by the data generator, and the small ConvNeXt of every demo.
demo_classes = ('circle', 'square', 'triangle', 'cross')
demo_palette = [(220, 40, 40), (40, 190, 40), (30, 90, 220), (230, 210, 30)]
# The segmentation maps label the background too (ADE20K's convention: 0 is unlabelled).
demo_seg_classes = ('background', ) + demo_classes
demo_seg_palette = [(90, 90, 90)] + demo_palette
# Depths 2-2-4-2, dims 32-256: trains from scratch on a 2-core CPU in minutes. It replaces a named arch
# (`_delete_`); the dims are a list, as mmdet's FPN takes them for its input widths.
demo_arch = dict(_delete_=True, depths=[2, 2, 4, 2], dims=[32, 64, 128, 256])
