"""Built-in backend plugins (installed as the ``gateway_plugins`` package).

Each module registers its backend through the ``gateway.backends`` entry
point, exactly as a third-party plugin does.
"""
