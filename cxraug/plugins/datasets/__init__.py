"""Built-in dataset adapters: readers for public chest X-ray collections as users download them."""
