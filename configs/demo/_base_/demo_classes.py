# The classes of the built-in demo data (backbones/runtime/demo_data.py draws them in this order) and their
# colours (RGB), for the detection and segmentation demo configs and the data generator alike.
demo_classes = ('circle', 'square', 'triangle', 'cross')
demo_palette = [(220, 40, 40), (40, 190, 40), (30, 90, 220), (230, 210, 30)]
# The segmentation maps label the background too (ADE20K's convention: 0 is unlabelled).
demo_seg_classes = ('background', ) + demo_classes
demo_seg_palette = [(90, 90, 90)] + demo_palette
