test "$(cat /proxies)" = "http://proxy.invalid:3128|http://proxy.invalid:3128|localhost|localhost|"
