"""The item index: what retrieval serves and what `recmesh bootstrap` / `publish-catalog` write.

- `base`: the declared interface (`ItemIndex`), its result types, the search filter and its rule;
- `layout`: what every backend holds per item (vector names, LAYOUT, payload, point ids);
- `edge`: a Qdrant Edge shard in process (`EdgeItemStore`);
- `qdrant_server`: a Qdrant server/cluster collection through qdrant-client (`QdrantServerStore`)."""
