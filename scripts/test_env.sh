# Sourced by scripts/run_tests.sh and CI: keep DDS on loopback, use a private domain id, never touch the hub.
_pai_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FASTDDS_DEFAULT_PROFILES_FILE="$_pai_root/config/fastdds_loopback.xml"
export ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT
# Domain ids stay in 1-101: higher ones map to UDP ports in the ephemeral range (ENVIRONMENT.md).
export ROS_DOMAIN_ID=${PAI_TEST_DOMAIN_ID:-$(( 1 + $$ % 101 ))}
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export HF_HOME=${HF_HOME_TEST:-/tmp/pai-hf-home-$UID}
export HF_DATASETS_CACHE="$HF_HOME/datasets"
export MUJOCO_GL=${MUJOCO_GL:-egl}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
