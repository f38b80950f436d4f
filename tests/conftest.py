import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    """Every test starts from a fixed global seed and uses at most 2 threads."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield


@pytest.fixture
def sideways_jpeg(tmp_path):
    """A JPEG stored 6 wide x 4 high whose EXIF orientation tag (6) says: show it 4 wide x 6
    high (as phones store portrait photos)."""
    from PIL import Image

    path = tmp_path / "phone" / "portrait.jpg"
    path.parent.mkdir()
    img = Image.new("RGB", (6, 4), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, exif=exif, quality=100)
    return path
