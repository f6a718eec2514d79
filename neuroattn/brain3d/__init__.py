"""Brain3D: a 3-D object from a decoded conditioning -- coarse radiance field, refined SDF mesh, export, turntable."""
