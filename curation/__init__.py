"""Curation of an indexed workspace, one package per pipeline stage: captions, scores, structure, review, export."""
