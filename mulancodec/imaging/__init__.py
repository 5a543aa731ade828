"""Images as the codec sees them: modes, canonical pixels and tiles (`image`), the
metadata an archive keeps (`metadata`), embedded JPEG-XL (`jxl`) and the demo's
sample picture (`sample`)."""
