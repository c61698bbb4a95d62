"""Catalog: the YAML presets in (models, tasks, studies, prompt sets, endpoints), read strictly;
validated Catalog, StudyPreset and TaskSpec objects out, for every later stage.
"""
