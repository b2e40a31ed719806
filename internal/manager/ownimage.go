package manager

import (
	"context"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/driverpilot/driverpilot/internal/version"
)

// ImageRepo is where the driverpilot image is published.
const ImageRepo = "ghcr.io/driverpilot/driverpilot"

// ManagerContainer is the manager's container name in its Deployment.
const ManagerContainer = "manager"

// agentImage decides the agents' image when --agent-image is not given: the image the manager's
// own pod runs (POD_NAME and POD_NAMESPACE from the downward API), because the agent ships in the
// same image and must have the manager's version. Reading it from the pod holds however the
// install set the image (a kustomize overlay, OLM, kubectl set image); a flag copied into the
// manifest does not. Outside a pod it is ImageRepo at the manager's version.
func agentImage(ctx context.Context, cfg *rest.Config, o Options) (string, error) {
	if o.AgentImage != "" {
		return o.AgentImage, nil
	}
	name, ns := os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
	if name == "" || ns == "" {
		return ImageRepo + ":" + version.Version, nil
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	pod, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("agent image: read the manager's own pod %s/%s (or pass --agent-image): %w", ns, name, err)
	}
	return containerImage(pod)
}

func containerImage(pod *corev1.Pod) (string, error) {
	for _, c := range pod.Spec.Containers {
		if c.Name == ManagerContainer {
			return c.Image, nil
		}
	}
	return "", fmt.Errorf("agent image: pod %s/%s has no container %q (pass --agent-image)", pod.Namespace, pod.Name, ManagerContainer)
}
