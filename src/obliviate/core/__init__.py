"""The bottom layer: errors, the plugin registry, options, progress, output safety, JSON, timing, pools."""
