"""Everything about data: readers, validation, the synthetic world, semantic IDs, the trie, DataModules.

Classes are importable from the package root (``adagrpo.datamodules.SeqRecDataModule``) for short
``class_path`` entries in YAML; the import is lazy so ``import datamodules`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Catalog": "adagrpo.datamodules.catalog",
    "Interactions": "adagrpo.datamodules.catalog",
    "DataError": "adagrpo.errors",
    "ConfigError": "adagrpo.errors",
    "DataSource": "adagrpo.datamodules.sources",
    "LCRecJson": "adagrpo.datamodules.readers",
    "SasRecText": "adagrpo.datamodules.readers",
    "RecBoleAtomic": "adagrpo.datamodules.readers",
    "TableFile": "adagrpo.datamodules.readers",
    "ItemFile": "adagrpo.datamodules.readers",
    "SyntheticSource": "adagrpo.datamodules.synthetic",
    "SyntheticWorld": "adagrpo.datamodules.synthetic",
    "SemanticIds": "adagrpo.datamodules.semantic_ids",
    "SidVocab": "adagrpo.datamodules.semantic_ids",
    "SidBuilder": "adagrpo.datamodules.semantic_ids",
    "RQKMeansSids": "adagrpo.datamodules.semantic_ids",
    "IndexFileSids": "adagrpo.datamodules.semantic_ids",
    "ItemEmbeddings": "adagrpo.datamodules.embeddings",
    "TextEmbeddings": "adagrpo.datamodules.embeddings",
    "SentenceEmbeddings": "adagrpo.datamodules.embeddings",
    "CollaborativeEmbeddings": "adagrpo.datamodules.embeddings",
    "NpyEmbeddings": "adagrpo.datamodules.embeddings",
    "CatalogTrie": "adagrpo.datamodules.trie",
    "SeqRecDataModule": "adagrpo.datamodules.sequence",
    "TokenBatch": "adagrpo.datamodules.sequence",
    "PromptBatch": "adagrpo.datamodules.sequence",
    "RewardDataModule": "adagrpo.datamodules.reward_data",
    "ExposureBatch": "adagrpo.datamodules.reward_data",
    "ExposureSpec": "adagrpo.datamodules.exposure",
    "SimulatedExposure": "adagrpo.datamodules.exposure",
    "WorldExposure": "adagrpo.datamodules.exposure",
    "CoatExposure": "adagrpo.datamodules.exposure",
    "CoatSource": "adagrpo.datamodules.exposure",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
