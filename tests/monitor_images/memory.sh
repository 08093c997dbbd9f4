# Allocates (and touches) memory past any small limit: the kernel's OOM killer must stop it.
python3 -c "
blocks = []
for _ in range(4096):
    blocks.append(bytearray(16 << 20))
print('allocated', len(blocks) * 16, 'MiB: no limit')
"
