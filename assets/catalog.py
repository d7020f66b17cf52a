"""The assets and checks of the project the default ``foundry`` resource points at. Dagster fixes an
asset's deps when the code location loads, so they follow that project's parameters (without the
``demo`` speech source there is no demo dataset); after editing them, reload the code location."""

from dagster import AssetChecksDefinition, AssetsDefinition

from assets.resources import FoundrySettings
from assets.step_asset import graph_assets, graph_checks
from mai_models.config import PipelineParams
from mai_models.graph import project


def catalog(params: PipelineParams) -> tuple[list[AssetsDefinition], list[AssetChecksDefinition]]:
    graph = project(FoundrySettings().load(), params)
    return graph_assets(graph), graph_checks(graph)


def in_groups(
    *groups: str, params: PipelineParams | None = None
) -> tuple[list[AssetsDefinition], list[AssetChecksDefinition]]:
    """The assets of some planes and their checks, for the current project's parameters unless
    ``params`` is given (tests materialise one plane at a time)."""
    assets, checks = catalog(params or FoundrySettings().params())
    chosen = [a for a in assets if a.group_names_by_key[a.key] in groups]
    keys = {a.key for a in chosen}
    return chosen, [c for c in checks if {k.asset_key for k in c.check_keys} <= keys]


ASSETS, CHECKS = catalog(FoundrySettings().params())
