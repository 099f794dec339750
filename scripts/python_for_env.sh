# Sourced by scripts/install_env.sh and scripts/install_system.sh: which Python the environment is made with.
# Without ROS 2: python3.11 (LeRobot 0.4.4 and the PyPI ROS 2 wheels). With a sourced ROS 2 (ROS_DISTRO set):
# the Python its rclpy was built for (Jazzy: python3.12), since a venv of another Python cannot import it.
# PYTHON, when set, must agree; a mismatch is one clear error.
ros_python() {
  local d
  for d in ${PYTHONPATH//:/ } /opt/ros/"${ROS_DISTRO:-none}"/lib/python3.*/site-packages; do
    if [[ -d "$d/rclpy" && "$d" =~ python(3\.[0-9]+) ]]; then
      echo "python${BASH_REMATCH[1]}"
      return 0
    fi
  done
  return 1
}

choose_python() {
  if [[ -z "${ROS_DISTRO:-}" ]]; then
    PYTHON=${PYTHON:-python3.11}
    return 0
  fi
  local want
  if ! want=$(ros_python); then
    echo "[pai] error: ROS_DISTRO=$ROS_DISTRO is set but no rclpy was found on PYTHONPATH or under" \
         "/opt/ros/$ROS_DISTRO/lib: source /opt/ros/$ROS_DISTRO/setup.bash (or unset ROS_DISTRO to use the PyPI wheels)" >&2
    return 1
  fi
  if [[ -n "${PYTHON:-}" && "$(basename "$PYTHON")" != "$want" ]]; then
    echo "[pai] error: PYTHON=$PYTHON, but the sourced ROS 2 $ROS_DISTRO's rclpy is built for $want and a venv of" \
         "another Python cannot import it: use PYTHON=$want (or leave PYTHON unset)" >&2
    return 1
  fi
  PYTHON=$want
  echo "[pai] ROS 2 $ROS_DISTRO is sourced: its rclpy is built for $want, so the environment uses $want"
}
