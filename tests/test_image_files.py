"""Reading X-ray files: real PNG (8 and 16 bit), JPEG and DICOM files written in a tmp dir."""

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from jimte.image_files import BadImageError, XrayImage, read_xray


def _ramp(height=24, width=40, high=255, dtype=np.uint8):
  return (np.linspace(0, high, height * width).reshape(height, width)).astype(dtype)


def _write_dicom(
  path, pixels, *, photometric="MONOCHROME2", window=None, spacing=None, pixel_data=True
):
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = pydicom.Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
  if window is not None:
    ds.WindowCenter, ds.WindowWidth = window
  if spacing is not None:
    ds.PixelSpacing = list(spacing)
  if pixel_data:
    ds.PixelData = pixels.astype(np.uint16).tobytes()
  ds.save_as(path, enforce_file_format=True)
  return str(path)


def test_8_bit_png_is_read_exactly(tmp_path):
  a = _ramp()
  Image.fromarray(a).save(tmp_path / "x.png")
  image = read_xray(tmp_path / "x.png")
  assert isinstance(image, XrayImage) and image.pixels.dtype == np.float32
  np.testing.assert_allclose(image.pixels, a / 255.0, atol=1e-7)
  assert image.source == str(tmp_path / "x.png") and image.pixel_spacing is None


def test_16_bit_png_keeps_its_levels(tmp_path):
  a = _ramp(high=65535, dtype=np.uint16)
  Image.fromarray(a).save(tmp_path / "x16.png")
  image = read_xray(tmp_path / "x16.png")
  np.testing.assert_allclose(image.pixels, a / 65535.0, atol=1e-7)
  assert len(np.unique(image.pixels)) > 256  # more than 8 bits survive


def test_jpeg_is_read_close_to_what_was_written(tmp_path):
  a = _ramp()
  Image.fromarray(a).save(tmp_path / "x.jpg", quality=95)
  np.testing.assert_allclose(read_xray(tmp_path / "x.jpg").pixels, a / 255.0, atol=0.03)


def test_dicom_monochrome1_is_inverted_and_spacing_kept(tmp_path):
  a = _ramp(high=4095, dtype=np.uint16)
  m2 = read_xray(_write_dicom(tmp_path / "m2.dcm", a, spacing=(0.139, 0.14)))
  m1 = read_xray(_write_dicom(tmp_path / "m1.dcm", a, photometric="MONOCHROME1"))
  np.testing.assert_allclose(m2.pixels, a / 4095.0, atol=1e-6)
  np.testing.assert_allclose(m1.pixels, 1.0 - m2.pixels, atol=1e-6)
  assert m2.pixel_spacing == (0.139, 0.14)
  assert m1.metadata["photometric_interpretation"] == "MONOCHROME1"


def test_dicom_window_is_applied(tmp_path):
  a = np.array([[0, 749, 1000, 1250, 4095]], np.uint16)
  image = read_xray(_write_dicom(tmp_path / "w.dcm", a, window=(1000, 501)))
  # DICOM's linear window: (x - (c - 0.5)) / (w - 1) + 0.5, clipped to [0, 1]
  np.testing.assert_allclose(image.pixels[0], [0.0, 0.0, 0.501, 1.0, 1.0], atol=1e-6)
  assert image.metadata["window"] == (1000.0, 501.0)


def test_a_dicom_without_extension_is_recognised(tmp_path):
  a = _ramp(high=4095, dtype=np.uint16)
  path = _write_dicom(tmp_path / "noext", a)
  np.testing.assert_allclose(read_xray(path).pixels, a / 4095.0, atol=1e-6)


def test_dicom_without_pixel_data_is_an_error_naming_the_file(tmp_path):
  path = _write_dicom(tmp_path / "empty.dcm", _ramp(dtype=np.uint16), pixel_data=False)
  with pytest.raises(BadImageError, match="empty.dcm.*no pixel data"):
    read_xray(path)


def test_truncated_and_garbage_files_are_errors_naming_the_file(tmp_path):
  Image.fromarray(_ramp(200, 200)).save(tmp_path / "full.png")
  data = (tmp_path / "full.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
  (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
  for name in ("cut.png", "junk.jpg", "missing.png"):
    with pytest.raises(BadImageError, match=name):
      read_xray(tmp_path / name)


def test_arrays_are_scaled_by_dtype_and_bad_floats_refused():
  np.testing.assert_allclose(read_xray(np.array([[0, 255]], np.uint8)).pixels, [[0.0, 1.0]])
  np.testing.assert_allclose(
    read_xray(np.array([[0, 65535]], np.uint16)[..., None]).pixels, [[0, 1]]
  )
  assert read_xray(np.zeros((3, 4), np.float32)).source == "<array>"
  with pytest.raises(BadImageError, match="in \\[0, 1\\]"):
    read_xray(np.full((3, 4), 2.0, np.float32))
  with pytest.raises(BadImageError, match="shape"):
    read_xray(np.zeros((3, 4, 3), np.uint8))
