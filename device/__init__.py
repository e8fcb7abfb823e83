"""dancesampler on the box: camera in, motiongram, int8 model, sound out.

Nothing here imports hardware libraries (picamera2, alsaaudio, gpiozero's pin
libraries, the TFLite runtime) at module level; each is imported inside the adapter
that needs it, so every module imports on any machine.
"""

__version__ = "0.1.0"
