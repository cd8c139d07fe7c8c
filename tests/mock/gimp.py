"""A small in-memory stand-in for ``gi.repository`` (Gimp, GimpUi, Gegl, GLib, GObject).

Enough of GIMP 3's Python API for plugins/gimp/harmonize/harmonize.py: images with a layer
tree, layers with offsets, alpha, layer masks and visibility, a selection, floating
selections, image duplicates, merge-visible, undo groups, the progress bar, and Gegl buffers
that convert between Babl formats (``R'G'B'A u8``, ``R'G'B' u16``, ``A float``, ...).

Pixels are stored as float64 ``(H, W, 4)`` perceptual RGBA in [0, 1]; integer formats round
to nearest when read. Every call that changes a user's image is appended to ``image.log``
(tests check that it happens inside one undo group). :func:`install` puts the modules into
``sys.modules`` (undo with the returned function).
"""

from __future__ import annotations

import enum
import sys
import types
from typing import Any

import numpy as np

# ---- Gegl -------------------------------------------------------------------------------------

_TYPES = {"u8": ("<u1", 255.0), "u16": ("<u2", 65535.0), "float": ("<f4", None)}
_MODELS = {"R'G'B'A": (0, 1, 2, 3), "R'G'B'": (0, 1, 2), "A": (3,), "Y": (0,)}


def _parse(babl_format: str) -> tuple[tuple[int, ...], str, float | None]:
    model, _, kind = babl_format.rpartition(" ")
    if model not in _MODELS or kind not in _TYPES:
        raise ValueError(f"mock Babl: unsupported format {babl_format!r}")
    dtype, full = _TYPES[kind]
    return _MODELS[model], dtype, full


class Rectangle:
    def __init__(self, x: int, y: int, w: int, h: int) -> None:
        self.x, self.y, self.width, self.height = x, y, w, h

    @classmethod
    def new(cls, x: int, y: int, w: int, h: int) -> Rectangle:
        return cls(x, y, w, h)


class AbyssPolicy(enum.Enum):
    NONE = 0
    CLAMP = 1


class Buffer:
    """A Gegl buffer view of a drawable's pixels (writes go straight to the drawable)."""

    def __init__(self, drawable: Drawable) -> None:
        self.drawable = drawable

    def get(self, rect: Rectangle, scale: float, fmt: str, abyss: AbyssPolicy) -> bytes:
        assert scale == 1.0 and abyss == AbyssPolicy.NONE
        channels, dtype, full = _parse(fmt)
        px = self.drawable.pixels
        out = np.zeros((rect.height, rect.width, 4))
        h, w = px.shape[:2]
        x0, y0 = max(rect.x, 0), max(rect.y, 0)
        x1, y1 = min(rect.x + rect.width, w), min(rect.y + rect.height, h)
        if x1 > x0 and y1 > y0:
            out[y0 - rect.y : y1 - rect.y, x0 - rect.x : x1 - rect.x] = px[y0:y1, x0:x1]
        sel = out[..., list(channels)]
        if full is not None:
            sel = np.round(sel * full)
        return np.ascontiguousarray(sel.astype(dtype)).tobytes()

    def set(self, rect: Rectangle, fmt: str, data: bytes) -> None:
        channels, dtype, full = _parse(fmt)
        arr = np.frombuffer(data, dtype=dtype).reshape(rect.height, rect.width, len(channels))
        arr = arr.astype(np.float64) / (full or 1.0)
        d = self.drawable
        h, w = d.pixels.shape[:2]
        assert rect.x >= 0 and rect.y >= 0 and rect.x + rect.width <= w
        assert rect.y + rect.height <= h, "mock: write outside the drawable"
        target = d.pixels[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width]
        for i, c in enumerate(channels):
            target[..., c] = arr[..., i]
        if not d.alpha:
            target[..., 3] = 1.0
        d.image.record("buffer-set", d)

    def flush(self) -> None:
        pass


Gegl = types.SimpleNamespace(Rectangle=Rectangle, AbyssPolicy=AbyssPolicy)


# ---- GLib / GObject ---------------------------------------------------------------------------


class GError(Exception):
    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.message = message

    @classmethod
    def new_literal(cls, _domain: int, message: str, _code: int) -> GError:
        return cls(message)


class MainLoop:
    """GLib's idle and timeout sources: queued here, run by :meth:`run_pending` (the tests
    call it where GTK's main loop would run them, e.g. while a dialog is open)."""

    def __init__(self) -> None:
        self.sources: dict[int, Any] = {}
        self.next_id = 1

    def add(self, _delay_ms: int, func: Any, *args: Any) -> int:
        source, self.next_id = self.next_id, self.next_id + 1
        self.sources[source] = (func, args)
        return source

    def idle_add(self, func: Any, *args: Any) -> int:
        return self.add(0, func, *args)

    def remove(self, source: int) -> bool:
        return self.sources.pop(source, None) is not None

    def run_pending(self) -> None:
        while self.sources:
            source = min(self.sources)
            func, args = self.sources.pop(source)
            if func(*args):  # True: call again later (not needed by the plug-in)
                self.sources[self.add(0, func, *args)] = (func, args)


LOOP = MainLoop()
GLib = types.SimpleNamespace(
    Error=GError,
    quark_from_string=lambda _s: 1,
    timeout_add=LOOP.add,
    idle_add=LOOP.idle_add,
    source_remove=LOOP.remove,
)
GObject = types.SimpleNamespace(ParamFlags=types.SimpleNamespace(READWRITE=3))


# ---- Gimp -------------------------------------------------------------------------------------


class Precision(enum.Enum):
    U8_NON_LINEAR = 150
    U8_LINEAR = 100
    U16_NON_LINEAR = 250
    U32_LINEAR = 300
    HALF_LINEAR = 500
    FLOAT_LINEAR = 600
    DOUBLE_PERCEPTUAL = 775

    @property
    def value_name(self) -> str:
        return f"GIMP_PRECISION_{self.name}"


class PDBStatusType(enum.Enum):
    EXECUTION_ERROR = 0
    CALLING_ERROR = 1
    PASS_THROUGH = 2
    SUCCESS = 3
    CANCEL = 4


class RunMode(enum.Enum):
    INTERACTIVE = 0
    NONINTERACTIVE = 1
    WITH_LAST_VALS = 2


def _enum(name: str, *members: str) -> type[enum.Enum]:
    return enum.Enum(name, {m: i for i, m in enumerate(members)})


MaskApplyMode = _enum("MaskApplyMode", "APPLY", "DISCARD")
AddMaskType = _enum("AddMaskType", "WHITE", "BLACK", "ALPHA", "SELECTION")
MergeType = _enum("MergeType", "EXPAND_AS_NECESSARY", "CLIP_TO_IMAGE", "CLIP_TO_BOTTOM_LAYER")
PDBProcType = _enum("PDBProcType", "INTERNAL", "PLUGIN", "PERSISTENT", "TEMPORARY")
ProcedureSensitivityMask = _enum("ProcedureSensitivityMask", "DRAWABLE", "DRAWABLES")


class Drawable:
    """A layer (or layer mask): pixels ``(h, w, 4)`` placed at ``(x, y)`` in its image."""

    _next_id = 1

    def __init__(self, image: Image, name: str, pixels: np.ndarray, x: int = 0, y: int = 0,
                 alpha: bool = True) -> None:  # fmt: skip
        self.image, self.name, self.x, self.y, self.alpha = image, name, x, y, alpha
        self.pixels = np.array(pixels, dtype=np.float64)
        self.visible = True
        self.parent: Layer | None = None
        self.mask: Drawable | None = None
        self.floating = False
        self.valid = True
        self.id = Drawable._next_id
        Drawable._next_id += 1

    def get_offsets(self) -> tuple[bool, int, int]:
        return True, self.x, self.y

    def get_width(self) -> int:
        return self.pixels.shape[1]

    def get_height(self) -> int:
        return self.pixels.shape[0]

    def get_buffer(self) -> Buffer:
        return Buffer(self)

    def get_image(self) -> Image:
        return self.image

    def update(self, *_box: int) -> bool:
        return True


class Layer(Drawable):
    def __init__(self, *args: Any, children: list[Layer] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.children = children  # None: not a group

    # tree
    def get_parent(self) -> Layer | None:
        return self.parent

    def is_group(self) -> bool:
        return self.children is not None

    def get_children(self) -> list[Layer]:
        return list(self.children or [])

    # properties
    def get_name(self) -> str:
        return self.name

    def set_name(self, name: str) -> None:
        self.image.record("set-name", self)
        self.name = name

    def get_visible(self) -> bool:
        return self.visible

    def set_visible(self, visible: bool) -> None:
        self.image.record("set-visible", self)
        self.visible = visible

    def has_alpha(self) -> bool:
        return self.alpha

    def add_alpha(self) -> None:
        if not self.alpha:
            self.image.record("add-alpha", self)
            self.alpha = True

    def is_floating_sel(self) -> bool:
        return self.floating

    def is_valid(self) -> bool:
        return self.valid

    # masks
    def get_mask(self) -> Drawable | None:
        return self.mask

    def create_mask(self, kind: Any) -> Drawable:
        assert kind == AddMaskType.SELECTION, "mock: only selection masks"
        h, w = self.pixels.shape[:2]
        sel = self.image.selection[self.y : self.y + h, self.x : self.x + w]
        return Drawable(self.image, "mask", np.repeat(sel[..., None], 4, axis=2), self.x, self.y)

    def add_mask(self, mask: Drawable) -> None:
        self.image.record("add-mask", self)
        self.mask = mask

    def remove_mask(self, mode: Any) -> None:
        self.image.record("remove-mask", self)
        if mode == MaskApplyMode.APPLY and self.mask is not None:
            self.pixels[..., 3] *= self.mask.pixels[..., 0]
        self.mask = None

    def copy(self) -> Layer:
        new = Layer(self.image, f"{self.name} copy", self.pixels.copy(), self.x, self.y,
                    alpha=self.alpha)  # fmt: skip
        new.mask = None if self.mask is None else Drawable(
            self.image, "mask", self.mask.pixels.copy(), self.x, self.y)  # fmt: skip
        new.visible = self.visible
        return new


class Image:
    """An RGB image: a layer tree (top first), a selection ``(H, W)`` in [0, 1], undo groups."""

    def __init__(self, width: int, height: int, precision: Precision = Precision.U8_NON_LINEAR
                 ) -> None:  # fmt: skip
        self.width, self.height, self.precision = width, height, precision
        self.layers: list[Layer] = []
        self.selection = np.zeros((height, width))
        self.log: list[tuple[str, Any]] = []
        self.undo_depth = 0
        self.undo_enabled = True
        self.deleted = False
        self.duplicates: list[Image] = []
        self.dirty = 0

    def record(self, what: str, item: Any = None) -> None:
        self.dirty += 1
        if self.undo_enabled:
            self.log.append((what, item))

    def is_dirty(self) -> bool:
        return self.dirty > 0

    def clean_all(self) -> bool:
        self.dirty = 0
        return True

    def get_width(self) -> int:
        return self.width

    def get_height(self) -> int:
        return self.height

    def get_precision(self) -> Precision:
        return self.precision

    def get_layers(self) -> list[Layer]:
        return list(self.layers)

    def _siblings(self, item: Layer) -> list[Layer]:
        return item.parent.children if item.parent is not None else self.layers  # type: ignore[return-value]

    def get_item_position(self, item: Layer) -> int:
        return self._siblings(item).index(item)

    def insert_layer(self, layer: Layer, parent: Layer | None, position: int) -> None:
        self.record("insert-layer", layer)
        layer.image, layer.parent = self, parent
        (parent.children if parent is not None else self.layers).insert(position, layer)  # type: ignore[union-attr]

    def remove_layer(self, layer: Layer) -> None:
        self.record("remove-layer", layer)
        self._siblings(layer).remove(layer)
        layer.valid = False

    def undo_group_start(self) -> bool:
        """Like GIMP, a group is an undo step even when nothing happens inside it (an "Undo
        Harmonize Layer" that undoes nothing), and it marks the image dirty."""
        self.log.append(("undo-group-start", None))
        self.undo_depth += 1
        self.dirty += 1
        return True

    def undo_group_end(self) -> bool:
        self.log.append(("undo-group-end", None))
        self.undo_depth -= 1
        return True

    def undo_disable(self) -> bool:
        self.undo_enabled = False
        return True

    def undo_freeze(self) -> bool:
        """Changes are not recorded until the matching thaw (a preview's temporary layer)."""
        self.frozen = getattr(self, "frozen", 0) + 1
        self.undo_enabled = False
        return True

    def undo_thaw(self) -> bool:
        assert getattr(self, "frozen", 0) > 0, "undo_thaw without undo_freeze"
        self.frozen -= 1
        self.undo_enabled = self.frozen == 0
        return True

    def get_selection(self) -> Drawable:
        """The selection channel (a copy: grey in the colour channels, read as "Y ...")."""
        grey = np.repeat(self.selection[..., None], 4, axis=2)
        grey[..., 3] = 1.0
        return Drawable(self, "Selection Mask", grey)

    def duplicate(self) -> Image:
        dup = Image(self.width, self.height, self.precision)
        dup.selection = self.selection.copy()

        def clone(layer: Layer, parent: Layer | None) -> Layer:
            twin = layer.copy()
            twin.name, twin.image, twin.parent = layer.name, dup, parent
            if layer.children is not None:
                twin.children = [clone(c, twin) for c in layer.children]
            return twin

        dup.layers = [clone(layer, None) for layer in self.layers]
        self.duplicates.append(dup)
        return dup

    def delete(self) -> bool:
        self.deleted = True
        return True

    def crop(self, width: int, height: int, x: int, y: int) -> bool:
        """Canvas crop: layers move by ``(-x, -y)`` (their pixels are kept, as reads clip)."""
        assert x >= 0 and y >= 0 and x + width <= self.width and y + height <= self.height
        self.record("crop")

        def move(layers: list[Layer]) -> None:
            for layer in layers:
                layer.x, layer.y = layer.x - x, layer.y - y
                move(layer.children or [])

        move(self.layers)
        self.selection = self.selection[y : y + height, x : x + width].copy()
        self.width, self.height = width, height
        return True

    def merge_visible_layers(self, mode: Any) -> Layer:
        """Normal-mode "over" compositing of the visible tree (groups pass through)."""
        assert mode == MergeType.CLIP_TO_IMAGE
        out = np.zeros((self.height, self.width, 4))

        def paint(layers: list[Layer]) -> None:
            for layer in reversed(layers):  # bottom first
                if not layer.visible:
                    continue
                if layer.children is not None:
                    paint(layer.children)
                    continue
                src = np.zeros_like(out)
                h, w = layer.pixels.shape[:2]
                x0, y0 = max(layer.x, 0), max(layer.y, 0)
                x1, y1 = min(layer.x + w, self.width), min(layer.y + h, self.height)
                src[y0:y1, x0:x1] = layer.pixels[y0 - layer.y : y1 - layer.y,
                                                 x0 - layer.x : x1 - layer.x]  # fmt: skip
                a = src[..., 3:]
                alpha = a + out[..., 3:] * (1 - a)
                rgb = src[..., :3] * a + out[..., :3] * out[..., 3:] * (1 - a)
                out[..., :3] = np.divide(rgb, alpha, out=np.zeros_like(rgb), where=alpha > 0)
                out[..., 3:] = alpha

        paint(self.layers)
        merged = Layer(self, "merged", out)
        self.layers = [merged] + [lay for lay in self.layers if not lay.visible]
        return merged


class Selection:
    @staticmethod
    def is_empty(image: Image) -> bool:
        return not image.selection.any()


class Procedure:
    """What ``Gimp.ImageProcedure.new`` returns: records the registration."""

    def __init__(self, plugin: Any, name: str, proc_type: Any, run: Any, data: Any) -> None:
        self.name, self.run_func = name, run
        self.menu_paths: list[str] = []
        self.arguments: dict[str, tuple[Any, ...]] = {}
        self.label = ""
        self.image_types = ""

    def set_image_types(self, types_: str) -> None:
        self.image_types = types_

    def set_sensitivity_mask(self, mask: Any) -> None:
        pass

    def set_menu_label(self, label: str) -> None:
        self.label = label

    def add_menu_path(self, path: str) -> None:
        self.menu_paths.append(path)

    def set_documentation(self, *text: str) -> None:
        pass

    def set_attribution(self, *text: str) -> None:
        pass

    def add_double_argument(self, name: str, *spec: Any) -> None:
        self.arguments[name] = ("double", *spec)

    def add_boolean_argument(self, name: str, *spec: Any) -> None:
        self.arguments[name] = ("boolean", *spec)

    def add_boolean_aux_argument(self, name: str, *spec: Any) -> None:
        self.arguments[name] = ("aux boolean", *spec)

    def new_return_values(self, status: PDBStatusType, error: GError) -> tuple[Any, GError]:
        return status, error


class Config:
    """A procedure config: the registered arguments' values, with ``notify::NAME`` signals."""

    def __init__(self, **values: Any) -> None:
        self.values = values
        self.handlers: dict[str, list[Any]] = {}

    def get_property(self, name: str) -> Any:
        return self.values[name]

    def set_property(self, name: str, value: Any) -> None:
        self.values[name] = value
        for handler in self.handlers.get(f"notify::{name}", []):
            handler(self, name)

    def connect(self, signal: str, handler: Any) -> int:
        self.handlers.setdefault(signal, []).append(handler)
        return len(self.handlers[signal])


class _Gimp(types.SimpleNamespace):
    """The ``Gimp`` module: classes plus the module-level functions (recorded in ``calls``)."""


def _make_gimp() -> _Gimp:
    calls: list[tuple[str, Any]] = []

    def recorder(name: str) -> Any:
        def call(*args: Any) -> bool:
            calls.append((name, args))
            return True

        return call

    def floating_sel_to_layer(layer: Layer) -> bool:
        layer.image.record("floating-sel-to-layer", layer)
        layer.floating = False
        return True

    class PlugIn:
        pass

    return _Gimp(
        PlugIn=PlugIn,
        ImageProcedure=types.SimpleNamespace(new=Procedure),
        Image=Image,
        Layer=Layer,
        Drawable=Drawable,
        Selection=Selection,
        Precision=Precision,
        PDBStatusType=PDBStatusType,
        PDBProcType=PDBProcType,
        RunMode=RunMode,
        MaskApplyMode=MaskApplyMode,
        AddMaskType=AddMaskType,
        MergeType=MergeType,
        ProcedureSensitivityMask=ProcedureSensitivityMask,
        ValueArray=tuple,
        MAJOR_VERSION=3,  # the GIMP the mock stands for (tests may change it)
        MINOR_VERSION=0,
        MICRO_VERSION=4,
        main=lambda *_a: 0,
        floating_sel_to_layer=floating_sel_to_layer,
        progress_init=recorder("progress_init"),
        progress_set_text=recorder("progress_set_text"),
        progress_update=recorder("progress_update"),
        progress_end=recorder("progress_end"),
        displays_flush=recorder("displays_flush"),
        message=recorder("message"),
        calls=calls,
    )


class _Dialog:
    """``GimpUi.ProcedureDialog``: ``run`` runs the pending GLib sources, then
    ``interact(config)`` (what the user does while it is open), and answers ``answer``."""

    answer = True
    interact: Any = None
    last: _Dialog | None = None
    opened = 0

    def __init__(self, config: Any) -> None:
        self.config = config
        self.filled: list[str] | None = None

    @classmethod
    def new(cls, _procedure: Any, config: Any, _title: str) -> _Dialog:
        _Dialog.last = cls(config)
        return _Dialog.last

    def fill(self, names: Any) -> None:
        self.filled = names

    def run(self) -> bool:
        _Dialog.opened += 1
        LOOP.run_pending()
        if _Dialog.interact is not None:
            _Dialog.interact(self.config)
            LOOP.run_pending()
        return _Dialog.answer

    def destroy(self) -> None:
        pass


PLUGIN_IO_MODULE = "gimp_io"
"""The GIMP plug-in's module that imports ``gi.repository`` (plugins/gimp/harmonize/gimp_io.py)."""


def install() -> tuple[types.SimpleNamespace, Any]:
    """Put fake ``gi`` + ``gi.repository`` into ``sys.modules``; returns (modules, restore)."""
    gimp = _make_gimp()
    _Dialog.last, _Dialog.opened = None, 0
    gimp_ui = types.SimpleNamespace(init=lambda _name: None, ProcedureDialog=_Dialog)
    repo = types.ModuleType("gi.repository")
    for name, mod in (("Gimp", gimp), ("GimpUi", gimp_ui), ("Gegl", Gegl), ("GLib", GLib),
                      ("GObject", GObject)):  # fmt: skip
        setattr(repo, name, mod)
    gi = types.ModuleType("gi")
    gi.require_version = lambda _name, _version: None  # type: ignore[attr-defined]
    gi.repository = repo  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in ("gi", "gi.repository")}
    sys.modules["gi"], sys.modules["gi.repository"] = gi, repo
    # The plug-in's sibling module binds Gimp/Gegl at import: import it afresh with this fake.
    sys.modules.pop(PLUGIN_IO_MODULE, None)

    def restore() -> None:
        sys.modules.pop(PLUGIN_IO_MODULE, None)
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value

    return types.SimpleNamespace(Gimp=gimp, GimpUi=gimp_ui, dialog=_Dialog), restore
