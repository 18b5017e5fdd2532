"""The item index: what retrieval serves and what `recmesh bootstrap` / `publish-catalog` write -
a Qdrant Edge shard in process (edge) or a Qdrant server/cluster collection (qdrant_server)."""
