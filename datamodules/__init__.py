"""Everything about data: readers, validation, the synthetic world, semantic IDs, the trie, DataModules.

Classes are importable from the package root (``datamodules.SeqRecDataModule``) for short
``class_path`` entries in YAML; the import is lazy so ``import datamodules`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Catalog": "datamodules.catalog",
    "Interactions": "datamodules.catalog",
    "DataError": "datamodules.errors",
    "ConfigError": "datamodules.errors",
    "DataSource": "datamodules.sources",
    "LCRecJson": "datamodules.readers",
    "SasRecText": "datamodules.readers",
    "RecBoleAtomic": "datamodules.readers",
    "TableFile": "datamodules.readers",
    "ItemFile": "datamodules.readers",
    "SyntheticSource": "datamodules.synthetic",
    "SyntheticWorld": "datamodules.synthetic",
    "SemanticIds": "datamodules.semantic_ids",
    "SidVocab": "datamodules.semantic_ids",
    "SidBuilder": "datamodules.semantic_ids",
    "RQKMeansSids": "datamodules.semantic_ids",
    "IndexFileSids": "datamodules.semantic_ids",
    "ItemEmbeddings": "datamodules.embeddings",
    "TextEmbeddings": "datamodules.embeddings",
    "SentenceEmbeddings": "datamodules.embeddings",
    "CollaborativeEmbeddings": "datamodules.embeddings",
    "NpyEmbeddings": "datamodules.embeddings",
    "CatalogTrie": "datamodules.trie",
    "SeqRecDataModule": "datamodules.sequence",
    "TokenBatch": "datamodules.sequence",
    "PromptBatch": "datamodules.sequence",
    "RewardDataModule": "datamodules.reward_data",
    "ExposureBatch": "datamodules.reward_data",
    "ExposureSpec": "datamodules.exposure",
    "SimulatedExposure": "datamodules.exposure",
    "WorldExposure": "datamodules.exposure",
    "CoatExposure": "datamodules.exposure",
    "CoatSource": "datamodules.exposure",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
