"""Service: the one facade the app and the command line both drive (Explorer), with the
public-mode policy; it adds no logic of its own beyond wiring the stages.
"""
