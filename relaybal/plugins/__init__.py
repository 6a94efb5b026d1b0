"""The plugin namespace of relaybal: relay policy plugins live in modules here.

Like ``twisted/plugins``, this package is open: a distribution installs its
own ``relaybal/plugins/<module>.py`` (and no ``__init__.py``) and the module
joins this package through ``pluginPackagePaths``, wherever on ``sys.path``
it was installed. ``twisted.plugin.getPlugins`` then finds its plugin objects
(see :mod:`relaybal.policy.discovery` and ``docs/plugins.rst``).
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
