"""What is neither an arch, a loss nor data: the ``basicsr`` command, the basicsr patches, safe option loading,
exact resume, the one image reader/writer, atomic writes, the rain-type list and the LPIPS metric.

Importing this package imports nothing else; each module is imported where it is used.
"""
