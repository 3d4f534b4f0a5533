"""Grow an artifact from new good images without a refit (``ad-update``; workstation side, needs torch).

- ``updaters``: detector → Updater (PaDiM: exact merge of sufficient statistics; PatchCore: greedy
  k-center continued from the bank, bounded);
- ``apply``: ``update_artifact`` — load and verify, extract the new images' features with the artifact's
  own graph and preprocessing, write a NEW artifact folder atomically (history, version, golden frames,
  threshold). docs/update.md.
"""
