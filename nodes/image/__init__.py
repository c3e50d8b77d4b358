"""The image family: loading and saving image files (with the graph in their metadata), image operations
(scale, crop, Canny edges) and masks."""
