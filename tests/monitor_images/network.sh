# Reports the network it sees. With network_mode none only the loopback interface exists and there is
# no route anywhere. (Nothing here sends a packet off the container, even if the sandbox were broken.)
echo "interfaces: $(ls /sys/class/net | tr '\n' ' ')"
echo "routes: $(tail -n +2 /proc/net/route | wc -l)"
for f in /workspace/inputs/*_0000.nii.gz; do
  cp "$f" "/workspace/outputs/$(basename "$f" _0000.nii.gz).nii.gz"
done
