"""Mask COG → GeoPackage polygons, block by block, seamless across block borders.

Every block (a window of the mask, ``block_size`` pixels square) is one task: it reads its own
window, labels the connected regions of each class in one pass
(:func:`~geoseg.vectorize.blocks.label_regions`, 4- or 8-connected, nodata never labelled),
traces the rings of the *label* raster (:mod:`geoseg.vectorize.trace`)
and computes per-region statistics (pixels, area, confidence sum) from the same pixels. Regions
that do not touch an inner block border are finished features and stream to the writer; pieces that
touch one go back to the client (:mod:`geoseg.vectorize.join`), except, on a cluster, pieces over
64 KiB of WKB: those stay on their worker and only their size travels. As blocks finish, the client
pairs the labels on both sides of each seam (and across block corners with 8-connectivity),
and as soon as no unfinished block can extend a region, dissolves its pieces into one polygon
(:func:`geoseg.vectorize.rings.dissolve`: pieces meet only on seams, so the union is edge
cancellation and relinking in numpy, no GEOS overlay) and lets it go. Large regions (over 4 MiB
of pieces, or with a piece kept on a worker) are dissolved by a worker, which fetches the kept
pieces from the others. The layer thus has exactly
one (multi)polygon per connected region of a class, as if the whole mask had been polygonized at
once, and the client holds about two block rows of border pieces plus the regions that really
span many blocks.

Geometries are built in *pixel* coordinates (each block's window offset as its transform), where
every vertex is an integer and seam edges are bit-identical between neighbours, and mapped to the
CRS with the scene's affine transform only when finished: the result does not depend on the
block size, down to the last bit of every coordinate.

Sieve (``min_area_m2``) — exact, global, block-bounded
------------------------------------------------------
GDAL's sieve (``rasterio.features.sieve``) replaces a region smaller than the threshold by its
*largest* neighbouring region, following a chain through small neighbours until a large one is
reached. Whether a neighbour is "largest" depends on its whole size, which can reach far beyond
any halo, so a per-block sieve with a halo cannot be exact. geoseg does it globally: a first pass
over the blocks returns only per-region sizes, first-pixel positions, seam rows and the
adjacencies of small pieces; the client joins regions across seams, decides every small region's
target class, and the second pass applies the per-block remap before polygonizing. Memory is one
block per task plus O(number of regions) on the client. Same semantics as GDAL (nodata is never
a neighbour and never changes) except ties between equally large neighbours, which geoseg breaks
by the neighbour's first pixel in raster order so that the result never depends on the blocks.

The layer is a valid coverage (``shapely.coverage_is_valid``): no gaps, no overlaps, and every
pixel corner where three or more regions meet (nodata and the scene's outside counting as one)
is a vertex of every polygon touching it. GDAL's polygonizer leaves such T-junctions out; the
ring tracer puts them in by construction (a ring edge ends wherever the region on its other side
changes), and on block seams the join finds them from the labels on both sides and the dissolve
keeps them. Simplification (``simplify_m``) holds the whole layer (vectors only, no pixels) and
runs ``shapely.coverage_simplify``, which simplifies every shared edge once: still a valid
coverage. Without simplification features stream to the file.
"""


from geoseg.vectorize.core import ProgressCallback, VectorizeResult, vectorize_mask
from geoseg.vectorize.maskinfo import MaskInfo, read_mask_info

__all__ = ["MaskInfo", "ProgressCallback", "VectorizeResult", "read_mask_info", "vectorize_mask"]
