"""Pieces shared by every step: environment set-up, schemas, step summaries."""
