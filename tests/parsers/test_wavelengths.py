"""parsers.wavelengths: every unit spelling to nanometres, and the no-unit guess."""

from __future__ import annotations

import numpy as np
import pytest

from parsers.wavelengths import nm_factor, to_nanometres, unit_factor


@pytest.mark.parametrize(("unit", "factor"), [
    ("nm", 1.0), ("Nanometers", 1.0), ("nanometres", 1.0), ("um", 1e3), ("µm", 1e3),
    ("Micrometers", 1e3), ("MICROMETER", 1e3), ("microns", 1e3), ("mm", 1e6),
    ("Millimeters", 1e6), ("cm", 1e7), ("Meters", 1e9), ("Angstroms", 0.1),
])
def test_linear_units(unit, factor):
    assert unit_factor(unit) == factor
    nm, note = to_nanometres([0.5, 1.0], unit)
    np.testing.assert_allclose(nm, [0.5 * factor, factor], rtol=1e-6)
    assert note is None and nm.dtype == np.float32


def test_wavenumbers_become_wavelengths():
    nm, note = to_nanometres([10000.0, 1000.0], "Wavenumber")
    np.testing.assert_allclose(nm, [1000.0, 10000.0])
    assert note is None
    assert nm_factor([1000.0], "cm-1") == (None, None)


def test_no_unit_is_guessed_and_said():
    nm, note = to_nanometres([0.4, 2.5], None)
    np.testing.assert_allclose(nm, [400.0, 2500.0], rtol=1e-6)
    assert note == "wavelengths have no unit; values up to 2.5 read as micrometres"
    nm, note = to_nanometres([400.0, 2500.0], "Unknown")
    np.testing.assert_allclose(nm, [400.0, 2500.0])
    assert "read as nanometres" in note


@pytest.mark.parametrize("unit", ["Index", "GHz", "furlongs"])
def test_not_a_wavelength(unit):
    nm, note = to_nanometres([1.0, 2.0], unit)
    assert nm is None and unit in note
