"""The ranker service: model catalog, 0-100 rank scores, match graph and Bradley-Terry ratings."""
