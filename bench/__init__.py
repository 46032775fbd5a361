"""One-off cost studies (``python -m bench.<name>``): measurements behind figures that
docs/PERFORMANCE.md quotes, not part of the product.  They may import the product;
no product package imports them, and they are not shipped to the VMs or the images."""
