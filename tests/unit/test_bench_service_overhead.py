"""bench/service_overhead.py's requests are what the service parses and decodes."""

from bench.service_overhead import images, multipart
from inference.classify import decode_image
from inference.request_body import split_multipart


def test_the_benchmarks_body_is_a_plain_multipart_body_of_decodable_pngs():
    pngs = images(5)
    body, ctype = multipart(pngs, first_id=10)
    ids, files = split_multipart(body, ctype.split("boundary=", 1)[1], max_parts=100, max_text=1000)
    assert ids == [f"img-{i}" for i in range(10, 15)]
    assert [data for data, _ in files] == pngs and {t for _, t in files} == {"image/png"}
    assert all(decode_image(png).shape == (32, 32, 3) for png in pngs)
    assert len(set(pngs)) == 5  # different images, not one repeated
