"""Similar-case search: per-image embeddings, a FAISS index with the films' metadata, patient timelines.

>>> from cxrlab.retrieval import embed, build_index, add_to_index, CaseIndex
>>> embed("efficientnet_lite0", "data/phantom", "emb.parquet")     # or a trained run directory
>>> build_index("emb.parquet", "cases.index")                      # kind="flat" (exact) | "ivf" | "hnsw"
>>> CaseIndex.load("cases.index").search(["query.png"], k=5)

Each query returns its top ``k`` patients (best-matching image per patient by cosine similarity, the query's
own patient left out when known), each with all the patient's indexed films ordered by ``offset_days``.
"""

from cxrlab.retrieval.embeddings import Embedder, Embeddings, embed, read_embeddings, write_embeddings
from cxrlab.retrieval.index import KINDS, CaseIndex, add_to_index, build_index, normalize, read_index_info

__all__ = ["KINDS", "CaseIndex", "Embedder", "Embeddings", "add_to_index", "build_index", "embed", "normalize",
           "read_embeddings", "read_index_info", "write_embeddings"]
