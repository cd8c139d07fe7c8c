"""Where the Krita plugin puts a result (``harmonize.output``), against the mocked ``krita``
module: the preview layer, Apply, Cancel, replace, and the undo steps each leaves in the
document's history (the mock records "Add Layer" / "Remove Layer" as Krita does). The same
flows run in real Krita in tests/test_krita_host_features.py.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests import test_plugin_krita as base
from tests.test_plugin_krita import H, W, fake_result, make_doc, plugin

krita = base.krita
"""The fixture: the mocked ``krita`` module, fresh for each test."""


def names(doc: Any) -> list[str]:
    return [n.name() for n in doc.root.childNodes()]


def prepared(krita: ModuleType) -> tuple[Any, Any, Any, bytes, Any]:
    """A document with a pasted layer, its inputs and a fake daemon answer (inverted crop)."""
    host = plugin("host")
    doc, _bg, layer = make_doc(krita)
    inputs = host.read_inputs(doc, layer)
    rgba, box = fake_result(inputs)
    return doc, layer, inputs, rgba, box


def history_of(monkeypatch: pytest.MonkeyPatch, doc: Any) -> None:
    """Krita's History docker list = the mock document's undo stack."""
    monkeypatch.setattr(plugin("output"), "undo_history", doc.undo_stack.labels)


def test_preview_then_apply_is_the_one_undo_step(
    krita: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = plugin("output")
    doc, layer, inputs, rgba, box = prepared(krita)
    history_of(monkeypatch, doc)
    before_steps, before_pixels = doc.undo_stack.done(), layer.pixelData(0, 0, W, H)
    preview = output.show_preview(doc, layer, inputs, rgba, box, output.NEW_LAYER)
    assert names(doc) == ["Background", "pasted", "[Preview] pasted (harmonized)", "on top"]
    assert layer.visible() and layer.pixelData(0, 0, W, H) == before_pixels
    result = output.commit(preview)
    assert names(doc) == ["Background", "pasted", "pasted (harmonized)", "on top"]
    assert result.visible() and doc.activeNode() is result
    assert doc.undo_stack.done() == [*before_steps, "Add Layer"]  # preview + Apply: one step
    got = np.frombuffer(result.pixelData(0, 0, W, H), np.uint8).reshape(H, W, 4)
    src = np.frombuffer(before_pixels, np.uint8).reshape(H, W, 4)
    inside = np.zeros((H, W), bool)
    inside[box.y : box.bottom, box.x : box.right] = True
    np.testing.assert_array_equal(got[inside][:, :3], 255 - src[inside][:, :3])
    krita.Krita.instance().action("edit_undo").trigger()
    assert names(doc) == ["Background", "pasted", "on top"]


def test_cancelled_preview_leaves_no_undo_step(
    krita: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = plugin("output")
    doc, layer, inputs, rgba, box = prepared(krita)
    history_of(monkeypatch, doc)
    before = doc.undo_stack.done()
    preview = output.show_preview(doc, layer, inputs, rgba, box, output.REPLACE)
    assert not layer.visible()  # replace: the source is hidden while previewing
    assert output.discard(preview) == "undone"
    assert names(doc) == ["Background", "pasted", "on top"] and layer.visible()
    assert doc.undo_stack.done() == before


def test_preview_after_another_step_is_removed_not_undone(
    krita: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something was done after the preview appeared: Edit > Undo would take back the user's
    step, so the preview is removed instead (Krita records that as "Remove Layer")."""
    output = plugin("output")
    doc, layer, inputs, rgba, box = prepared(krita)
    history_of(monkeypatch, doc)
    preview = output.show_preview(doc, layer, inputs, rgba, box, output.NEW_LAYER)
    doc.root.addChildNode(doc.createNode("painted", "paintlayer"), None)
    assert output.discard(preview) == "removed"
    assert names(doc) == ["painted", "Background", "pasted", "on top"]
    assert doc.undo_stack.done()[-3:] == ["Add Layer", "Add Layer", "Remove Layer"]
    monkeypatch.setattr(output, "undo_history", lambda: None)  # no History docker at all
    preview = output.show_preview(doc, layer, inputs, rgba, box, output.NEW_LAYER)
    assert output.discard(preview) == "removed"


def test_undone_preview_is_gone(krita: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    output = plugin("output")
    doc, layer, inputs, rgba, box = prepared(krita)
    history_of(monkeypatch, doc)
    preview = output.show_preview(doc, layer, inputs, rgba, box, output.NEW_LAYER)
    krita.Krita.instance().action("edit_undo").trigger()  # the user's Ctrl+Z
    assert output.discard(preview) == "gone"
    with pytest.raises(plugin("deps").host_side().PluginError, match="run Harmonize again"):
        output.commit(preview)


def test_replace_takes_the_source_place_and_undo_restores_it(krita: ModuleType) -> None:
    output = plugin("output")
    doc, layer, inputs, rgba, box = prepared(krita)
    layer.setVisible(False)
    before_steps, before_pixels = doc.undo_stack.done(), layer.pixelData(0, 0, W, H)
    result = output.write(doc, layer, inputs, rgba, box, output.REPLACE)
    assert names(doc) == ["Background", "pasted", "on top"]
    assert doc.root.childNodes()[1] is result and layer.parentNode() is None
    assert not result.visible()  # the source's visibility, name and place
    assert doc.undo_stack.done() == [*before_steps, "Add Layer", "Remove Layer"]
    assert result.pixelData(0, 0, W, H) != before_pixels
    for _ in range(2):
        krita.Krita.instance().action("edit_undo").trigger()
    assert doc.root.childNodes()[1] is layer and names(doc) == ["Background", "pasted", "on top"]
    assert layer.pixelData(0, 0, W, H) == before_pixels  # never written


def test_replace_preview_modes_and_before(krita: ModuleType, monkeypatch: pytest.MonkeyPatch):
    output = plugin("output")
    doc, layer, inputs, rgba, box = prepared(krita)
    history_of(monkeypatch, doc)
    preview = output.show_preview(doc, layer, inputs, rgba, box, output.REPLACE)
    shown = doc.root.childNodes()[2]
    output.show_before(preview, True)
    assert layer.visible() and not shown.visible()
    output.show_before(preview, False)
    assert not layer.visible() and shown.visible()
    output.set_mode(preview, output.NEW_LAYER)
    assert layer.visible()
    output.set_mode(preview, output.REPLACE)
    result = output.commit(preview)
    assert names(doc) == ["Background", "pasted", "on top"] and result is shown
    assert result.visible() and layer.parentNode() is None


def test_replace_refuses_a_layer_with_masks(krita: ModuleType) -> None:
    output = plugin("output")
    doc, layer, inputs, rgba, box = prepared(krita)
    layer.addChildNode(doc.createNode("mask", "transparencymask"), None)
    with pytest.raises(plugin("deps").host_side().PluginError, match="has masks"):
        output.write(doc, layer, inputs, rgba, box, output.REPLACE)
    assert "pasted (harmonized)" not in names(doc)
    with pytest.raises(plugin("deps").host_side().PluginError, match="Unknown output mode"):
        output.check_mode("sideways", layer)
