"""Search your own crops: ``hhcl search`` embeds a gallery folder once (cached beside it), ranks it for query images
with faiss, and writes rank-list pictures from the original images and ``results.json``."""

from __future__ import annotations

from hhcl.search.gallery import GalleryEmbeddings, SearchError, embed_gallery, list_gallery
from hhcl.search.rank import top_k
from hhcl.search.run import Match, QueryResult, SearchReport, search

__all__ = [
    "GalleryEmbeddings",
    "Match",
    "QueryResult",
    "SearchError",
    "SearchReport",
    "embed_gallery",
    "list_gallery",
    "search",
    "top_k",
]
