"""Data: text (``text``, ``corpus``, ``tokenizers``, ``prepare``, ``streaming``, ``chunks``) and
images (``imagenet``, ``image_sources``, ``image_prepare``), prepared once into litdata chunks
and streamed with exact resume (docs/DATA.md). Imports nothing else of the project."""
