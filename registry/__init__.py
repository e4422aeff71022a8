"""The paramdelta registry: publish, browse, search and pull delta artifacts.

    from registry.app import create_app
    from registry.settings import Settings
    app = create_app(Settings(data="/srv/paramdelta"))

or ``paramdelta serve --data /srv/paramdelta``.
"""
