"""Block-wise inference on whole ``(Z, Y, X)`` volumes: the volume IO layer.

- ``open_volume(spec)`` -> ``VolumeSource``: Zarr v2/v3 arrays, OME-Zarr images, multi-page TIFF stacks and
  HDF5 datasets (``file.h5:/dataset``), read lazily one region of one slice at a time.
- ``plan_blocks(shape, block, halo)`` -> ``Block``s: one slice by whole ``CHUNK`` squares each.
- ``VolumeOutput.create_or_resume(path, shape, settings)``: an OME-Zarr (NGFF v0.5) output with a
  multiscale probability and a ``labels/mask`` label image, written block by block by many processes.
- ``VoxelSize``: the physical voxel size an input's metadata records (``VolumeSource.voxel``), which the output
  keeps in its NGFF scale, translation and units.

Importing this package loads no Zarr, Dask or HDF5 library; they load inside the functions that use them.
"""

from seg.runtime.volume.blocks import CHUNK, Block, plan_blocks
from seg.runtime.volume.sources import VolumeSource, is_volume_spec, open_volume
from seg.runtime.volume.store import PROB_DTYPES, VolumeOutput
from seg.runtime.volume.voxels import VoxelSize

__all__ = [
    "CHUNK",
    "PROB_DTYPES",
    "Block",
    "VolumeOutput",
    "VolumeSource",
    "VoxelSize",
    "is_volume_spec",
    "open_volume",
    "plan_blocks",
]
