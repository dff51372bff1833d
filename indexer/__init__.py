"""Raw data -> workspace: read, decode, embed, write; the workspace store, schema, FAISS and model edges."""
