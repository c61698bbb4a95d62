"""Cases: any image file, a folder of them, or a Hugging Face dataset in; Case (RGB image,
task, label, content hash) out.
"""
