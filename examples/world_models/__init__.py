"""World Models (Ha & Schmidhuber 2018) on gymnasium's CarRacing-v3, from clockwork's parts.

Run as ``python examples/world_models STAGE --run DIR [--preset smoke|small|paper]``;
the stages and presets: docs/tutorials/world_models.md. Needs the ``worldmodels`` extra
(``pip install -e ".[worldmodels]"``: gymnasium with Box2D).
"""
