"""What a run's model is, resolved once per plan before its weights load: family, image mode, page size, vision tokens.

:func:`model_facts` is the one place these facts are worked out: the run plan
(:mod:`deepsynth.training.plan`) resolves them once and hands them to the recommendation, the data
loader (the page size PDF pages are rendered at) and the trainer (the mode recorded with the adapter,
the vision tokens metrics.json reports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deepsynth.data.pdf import DEFAULT_PAGE_SIZE, PageSize
from deepsynth.errors import ConfigError
from deepsynth.evaluation.pages import page_size_of
from deepsynth.models.image_modes import IMAGE_MODES, ImageMode, VisionTokens, mode_of_resolved, vision_tokens_per_page
from deepsynth.models.resolver import ResolvedConfig, resolve_config


@dataclass
class ModelFacts:
    """A model name as the loader will resolve it, read in one resolution mode; no weights are read.

    ``resolved`` is None when the name cannot be resolved here (a hub name not cached while offline):
    ``unresolved`` says why, the facts are unknown (``reads_pages`` None) and pages get the default
    size; the loader reports the problem when the run loads the model.
    """

    model_name: str | None  # as the config names it (None: the embedded default)
    resolved: ResolvedConfig | None
    image_mode: ImageMode | None  # None for a text model (or an unresolved one)
    vision_tokens: VisionTokens | None  # what a page costs in ``image_mode``
    page_size: PageSize  # the longer side PDF pages are rendered at for ``image_mode``
    unresolved: str | None = None
    _tokenizer: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def family(self) -> str | None:
        return None if self.resolved is None else self.resolved.family

    @property
    def reads_pages(self) -> bool | None:
        """Whether the model reads page images (None: unknown, the model could not be resolved)."""
        return None if self.resolved is None else self.image_mode is not None

    @property
    def recorded_mode(self) -> str | None:
        """The mode's name as training_config.json records it: a named mode of the family, None otherwise
        (a local checkpoint's own settings are no named mode: they are read from the checkpoint again)."""
        mode = self.image_mode
        if mode is None or mode.name not in IMAGE_MODES.get(self.family or "", {}):
            return None
        return mode.name

    def tokenizer(self) -> Any:
        """The model's tokenizer, loaded on first use (weights never are). ModelLoadError when it cannot load."""
        if self._tokenizer is None:
            from deepsynth.models.loading import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_name)
        return self._tokenizer


def model_facts(model_name: str | None, image_mode: str | None) -> ModelFacts:
    """The facts of ``model_name`` read in ``image_mode`` (None: the model's own mode).

    Raises ConfigError for a mode the model's family lacks (or any mode of a text model).
    """
    try:
        resolved = resolve_config(model_name)
    except ConfigError:
        raise
    except (ValueError, OSError) as error:  # a hub name not cached while offline: the loader will say more
        return ModelFacts(model_name, None, None, None, DEFAULT_PAGE_SIZE, unresolved=str(error))
    mode = mode_of_resolved(resolved, image_mode)
    tokens = None if mode is None else vision_tokens_per_page(resolved.family, mode, resolved.config)
    return ModelFacts(model_name, resolved, mode, tokens, page_size_of(mode))

