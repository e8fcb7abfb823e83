"""dancesampler on the host: everything that turns dances into a model.

Importers (videos, motion capture, sessions pulled from the box), the dataset, the
joint VAE, training, int8 export and evaluation. It may import ``device`` (for the
one motiongram and the bundle format) and TensorFlow; the box never imports it.
"""
