"""Probes: images and models in; descriptions diagnosed by a text model, and vision-encoder
embeddings (t-SNE, linear probe), plus the search for the smallest wording that flips an answer, out.
"""
