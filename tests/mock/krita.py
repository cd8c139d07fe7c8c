"""A small in-memory stand-in for Krita's ``krita`` module (libkis), for unit tests.

It models what the plugin relies on, with the real API's conventions:

- ``Node.pixelData(x, y, w, h)`` / ``setPixelData(bytes, x, y, w, h)``: raw **BGRA** bytes in
  image coordinates (transparent outside what was written), little-endian items of the
  node's depth (U8, U16, F16, F32);
- ``Document.pixelData``: the projection, visible paint layers composited bottom to top with
  the normal (source-over) operator and the layers' opacity;
- ``childNodes()`` lists bottom to top; ``addChildNode(child, above)`` inserts just above;
- ``Document.clone()`` deep-copies nodes and keeps their ``uniqueId``;
- ``Document.setColorSpace`` converts between RGBA depths (profiles are names only).

Every change to a document is appended to ``Document.log`` so tests can check the order of
operations (e.g. that a layer is complete before it is added). Like Krita's, each
``addChildNode`` and ``Node.remove`` is an undo step ("Add Layer", "Remove Layer") on the
document's ``undo_stack``; ``Krita.action("edit_undo"/"edit_redo").trigger()`` undoes or redoes
the active document's last one (pixel, name and visibility changes are not undo steps).
Like Krita, ``setBlendingMode`` records an undo command ("Composition Mode Change") in the
node's document even while the node is not in the image; ``setOpacity`` records none.
``addChildNode`` of a node made by another document moves it over (Krita re-parents the node's
image).
"""

from __future__ import annotations

import copy
import itertools
import struct
import uuid
from typing import Any

_ITEM = {
    "U8": ("B", 1, 255.0),
    "U16": ("H", 2, 65535.0),
    "F16": ("e", 2, 1.0),
    "F32": ("f", 4, 1.0),
}


def _decode(data: bytes, depth: str) -> list[float]:
    code, size, scale = _ITEM[depth]
    return [v / scale for v in struct.unpack(f"<{len(data) // size}{code}", data)]


def _encode(values: list[float], depth: str) -> bytes:
    code, _size, scale = _ITEM[depth]
    if code in "BH":
        ints = [min(int(scale), max(0, round(v * scale))) for v in values]
        return struct.pack(f"<{len(ints)}{code}", *ints)
    return struct.pack(f"<{len(values)}{code}", *values)


class QRect:
    def __init__(self, x: int, y: int, w: int, h: int) -> None:
        self._r = (x, y, w, h)

    def x(self) -> int:
        return self._r[0]

    def y(self) -> int:
        return self._r[1]

    def width(self) -> int:
        return self._r[2]

    def height(self) -> int:
        return self._r[3]


class Selection:
    """An 8-bit global selection (one byte a pixel, 255 = selected)."""

    def __init__(self) -> None:
        self.pixels: dict[tuple[int, int], int] = {}

    def select(self, x: int, y: int, w: int, h: int, value: int) -> None:
        for j in range(y, y + h):
            for i in range(x, x + w):
                self.pixels[(i, j)] = value

    def _box(self) -> tuple[int, int, int, int]:
        on = [p for p, v in self.pixels.items() if v]
        if not on:
            return 0, 0, 0, 0
        xs, ys = [p[0] for p in on], [p[1] for p in on]
        return min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1

    def x(self) -> int:
        return self._box()[0]

    def y(self) -> int:
        return self._box()[1]

    def width(self) -> int:
        return self._box()[2]

    def height(self) -> int:
        return self._box()[3]

    def pixelData(self, x: int, y: int, w: int, h: int) -> bytes:
        return bytes(self.pixels.get((i, j), 0) for j in range(y, y + h) for i in range(x, x + w))


class Node:
    def __init__(self, doc: Document, name: str, kind: str = "paintlayer") -> None:
        self.doc = doc
        self._name = name
        self._type = kind
        self._id = "{" + str(uuid.uuid4()) + "}"
        self.children: list[Node] = []
        self.parent: Node | None = None
        self.model, self.depth, self.profile = doc.model, doc.depth, doc.profile
        self.pixels: dict[tuple[int, int], tuple[float, float, float, float]] = {}  # RGBA
        self._visible = True
        self._opacity = 255
        self._blending = "normal"

    # identity and tree
    def name(self) -> str:
        return self._name

    def setName(self, name: str) -> None:
        self._name = name

    def type(self) -> str:
        return self._type

    def uniqueId(self) -> str:
        return self._id

    def childNodes(self) -> list[Node]:
        return list(self.children)

    def parentNode(self) -> Node | None:
        return self.parent

    def addChildNode(self, child: Node, above: Node | None) -> bool:
        index = 0 if above is None else self.children.index(above) + 1
        self.children.insert(index, child)
        child.parent = self
        stack = [child]
        while stack:  # a node from another document now belongs to this one
            node = stack.pop()
            node.doc = self.doc
            stack.extend(node.children)
        self.doc.log.append(("addChildNode", child.name(), dict(child.pixels)))
        self.doc.undo_stack.push(UndoStep("Add Layer", child, self, index))
        return True

    def remove(self) -> bool:
        parent = self.parent
        if parent is None:
            return False
        index = parent.children.index(self)
        parent.children.remove(self)
        self.parent = None
        self.doc.log.append(("remove", self._name))
        self.doc.undo_stack.push(UndoStep("Remove Layer", self, parent, index))
        return True

    # properties
    def visible(self) -> bool:
        return self._visible

    def setVisible(self, value: bool) -> None:
        self._visible = value
        self.doc.log.append(("setVisible", self._name, value))

    def opacity(self) -> int:
        return self._opacity

    def setOpacity(self, value: int) -> None:
        self._opacity = value

    def blendingMode(self) -> str:
        return self._blending

    def setBlendingMode(self, value: str) -> None:
        self._blending = value
        self.doc.log.append(("setBlendingMode", self._name, value))  # an undo step in Krita

    def colorModel(self) -> str:
        return self.model

    def colorDepth(self) -> str:
        return self.depth

    def colorProfile(self) -> str:
        return self.profile

    # pixels
    def bounds(self) -> QRect:
        on = [p for p, v in self.pixels.items() if v[3] > 0]
        if not on:
            return QRect(0, 0, 0, 0)
        xs, ys = [p[0] for p in on], [p[1] for p in on]
        return QRect(min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1)

    def pixelData(self, x: int, y: int, w: int, h: int) -> bytes:
        values: list[float] = []
        for j, i in itertools.product(range(y, y + h), range(x, x + w)):
            r, g, b, a = self.pixels.get((i, j), (0.0, 0.0, 0.0, 0.0))
            values += [b, g, r, a]
        return _encode(values, self.depth)

    def setPixelData(self, data: bytes, x: int, y: int, w: int, h: int) -> None:
        values = _decode(bytes(data), self.depth)
        if len(values) != w * h * 4:
            raise ValueError(f"{len(values)} items for a {w} x {h} BGRA rectangle")
        for n, (j, i) in enumerate(itertools.product(range(y, y + h), range(x, x + w))):
            b, g, r, a = values[4 * n : 4 * n + 4]
            self.pixels[(i, j)] = (r, g, b, a)
        self.doc.log.append(("setPixelData", self._name, self.parent is not None))


class Document:
    def __init__(self, width: int, height: int, model: str, depth: str, profile: str) -> None:
        self.w, self.h = width, height
        self.model, self.depth, self.profile = model, depth, profile
        self.log: list[tuple[Any, ...]] = []
        self.root = Node(self, "root", "grouplayer")
        self.active: Node | None = None
        self._selection: Selection | None = None
        self.closed = False
        self.undo_stack = UndoStack()

    def width(self) -> int:
        return self.w

    def height(self) -> int:
        return self.h

    def colorModel(self) -> str:
        return self.model

    def colorDepth(self) -> str:
        return self.depth

    def colorProfile(self) -> str:
        return self.profile

    def resolution(self) -> int:
        return 72

    def rootNode(self) -> Node:
        return self.root

    def activeNode(self) -> Node | None:
        return self.active

    def setActiveNode(self, node: Node) -> None:
        self.active = node

    def selection(self) -> Selection | None:
        return self._selection

    def setSelection(self, selection: Selection | None) -> None:
        self._selection = selection

    def createNode(self, name: str, kind: str) -> Node:
        return Node(self, name, kind)

    def refreshProjection(self) -> None:
        self.log.append(("refreshProjection",))

    def waitForDone(self) -> None:
        pass

    def close(self) -> bool:
        self.closed = True
        return True

    def clone(self) -> Document:
        twin = copy.deepcopy(self)
        twin.log = []
        twin.undo_stack = UndoStack()  # a clone has no history of its own
        Krita.instance().created.append(twin)
        return twin

    def setColorSpace(self, model: str, depth: str, profile: str) -> bool:
        if model != "RGBA" or self.model != "RGBA":
            return False  # the mock converts depths only
        self.depth, self.profile = depth, profile
        stack = [self.root]
        while stack:
            node = stack.pop()
            node.depth, node.profile = depth, profile
            stack.extend(node.children)
        return True

    def pixelData(self, x: int, y: int, w: int, h: int) -> bytes:
        """The projection: visible layers, source-over, bottom to top."""
        values: list[float] = []
        for j, i in itertools.product(range(y, y + h), range(x, x + w)):
            r = g = b = a = 0.0
            for node in _visible_leaves(self.root):
                sr, sg, sb, sa = node.pixels.get((i, j), (0.0, 0.0, 0.0, 0.0))
                sa *= node.opacity() / 255
                out = sa + a * (1 - sa)
                if out > 0:
                    r = (sr * sa + r * a * (1 - sa)) / out
                    g = (sg * sa + g * a * (1 - sa)) / out
                    b = (sb * sa + b * a * (1 - sa)) / out
                a = out
            values += [b, g, r, a]
        return _encode(values, self.depth)


def _visible_leaves(node: Node) -> list[Node]:
    out: list[Node] = []
    for child in node.children:
        if not child.visible():
            continue
        if child.type() == "grouplayer":
            out += _visible_leaves(child)
        elif child.type() == "paintlayer":
            out.append(child)
    return out


class Krita:
    _instance: Krita | None = None

    def __init__(self) -> None:
        self.active_document: Document | None = None
        self.created: list[Document] = []
        self.settings: dict[tuple[str, str], str] = {}
        self.extensions: list[Any] = []
        self.docker_factories: list[Any] = []
        self.version_string = "5.1.5"

    @classmethod
    def instance(cls) -> Krita:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    @classmethod
    def reset(cls) -> Krita:
        cls._instance = cls()
        return cls._instance

    def version(self) -> str:
        return self.version_string

    def activeDocument(self) -> Document | None:
        return self.active_document

    def createDocument(
        self, w: int, h: int, name: str, model: str, depth: str, profile: str, res: float
    ) -> Document:
        doc = Document(w, h, model, depth, profile)
        self.created.append(doc)
        return doc

    def readSetting(self, group: str, name: str, default: str) -> str:
        return self.settings.get((group, name), default)

    def writeSetting(self, group: str, name: str, value: str) -> None:
        self.settings[(group, name)] = value

    def addExtension(self, extension: Any) -> None:
        self.extensions.append(extension)

    def addDockWidgetFactory(self, factory: Any) -> None:
        self.docker_factories.append(factory)

    def batchmode(self) -> bool:
        return True

    def dockers(self) -> list[Any]:
        return []

    def action(self, name: str) -> Action:
        return Action(name)


class Action:
    """``Krita.action(name)``: Edit > Undo and Redo act on the active document."""

    def __init__(self, name: str) -> None:
        self.name = name

    def trigger(self) -> None:
        doc = Krita.instance().active_document
        if doc is not None and self.name == "edit_undo":
            doc.undo_stack.undo()
        elif doc is not None and self.name == "edit_redo":
            doc.undo_stack.redo()


class UndoStep:
    """One undo step: ``node`` was added to (or removed from) ``parent`` at ``index``."""

    def __init__(self, label: str, node: Node, parent: Node, index: int) -> None:
        self.label, self.node, self.parent, self.index = label, node, parent, index

    def _put_back(self) -> None:
        self.parent.children.insert(self.index, self.node)
        self.node.parent = self.parent

    def _take_out(self) -> None:
        self.parent.children.remove(self.node)
        self.node.parent = None

    def undo(self) -> None:
        self._take_out() if self.label == "Add Layer" else self._put_back()

    def redo(self) -> None:
        self._put_back() if self.label == "Add Layer" else self._take_out()


class UndoStack:
    """A document's undo history: ``steps[:index]`` are done, the rest can be redone."""

    def __init__(self) -> None:
        self.steps: list[UndoStep] = []
        self.index = 0

    def push(self, step: UndoStep) -> None:
        del self.steps[self.index :]
        self.steps.append(step)
        self.index = len(self.steps)

    def undo(self) -> None:
        if self.index:
            self.index -= 1
            self.steps[self.index].undo()

    def redo(self) -> None:
        if self.index < len(self.steps):
            self.steps[self.index].redo()
            self.index += 1

    def labels(self) -> list[str]:
        """As Krita's History docker lists them: "<empty>", then every step (undone too)."""
        return ["<empty>", *(step.label for step in self.steps)]

    def done(self) -> list[str]:
        """The steps in effect (what one Edit > Undo per entry would take back)."""
        return [step.label for step in self.steps[: self.index]]


class Extension:
    def __init__(self, parent: Any) -> None:
        self.parent = parent


class DockWidget:
    pass


class DockWidgetFactoryBase:
    DockRight = 1


class DockWidgetFactory:
    def __init__(self, name: str, position: int, cls: type) -> None:
        self.name, self.position, self.cls = name, position, cls


class InfoObject:
    pass
