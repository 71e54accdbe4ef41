"""The models: the ConvNeXt backbone and FCMAE."""
