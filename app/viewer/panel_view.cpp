#include "panel_view.hpp"

#include <QMouseEvent>
#include <QResizeEvent>
#include <QScrollBar>
#include <QWheelEvent>

FittedImageLabel::FittedImageLabel(Qt::TransformationMode mode, QWidget* parent) : QLabel(parent), mode_(mode)
{
    // Ignored: the pixmap is scaled to the label, the label never grows for the pixmap.
    setSizePolicy(QSizePolicy::Ignored, QSizePolicy::Ignored);
    setMinimumSize(120, 80);
    setAlignment(Qt::AlignCenter);
}

void FittedImageLabel::setImage(const QImage& image)
{
    image_ = image;
    rescale();
}

void FittedImageLabel::clearImage()
{
    image_ = QImage();
    clear();
}

void FittedImageLabel::resizeEvent(QResizeEvent* event)
{
    QLabel::resizeEvent(event);
    rescale();
}

void FittedImageLabel::rescale()
{
    if (image_.isNull()) return;
    setPixmap(QPixmap::fromImage(image_).scaled(size(), Qt::KeepAspectRatio, mode_));
}

WrappedLabel::WrappedLabel(const QString& text, QWidget* parent) : QLabel(text, parent) { setWordWrap(true); }

void WrappedLabel::setWrappedText(const QString& text)
{
    setText(text);
    setMinimumHeight(0);  // a new text: its own height, from scratch
    fitHeight();
}

void WrappedLabel::resizeEvent(QResizeEvent* event)
{
    QLabel::resizeEvent(event);
    fitHeight();
}

void WrappedLabel::fitHeight()
{
    // Only ever raised between text changes: setMinimumHeight resizes (and so re-enters here)
    // at once, and the dock's width moves with its scroll bar, so a height that followed the
    // width both ways could go back and forth forever. A little slack: a clipped last line is
    // worse than a gap.
    if (fitting_ || width() < 60) return;  // re-entered from setMinimumHeight, or not laid out yet
    fitting_ = true;
    const int h = heightForWidth(width()) + fontMetrics().descent() + 2;
    if (h > minimumHeight()) setMinimumHeight(h);
    fitting_ = false;
}

ElidedLabel::ElidedLabel(QWidget* parent) : QLabel(parent)
{
    setSizePolicy(QSizePolicy::Ignored, QSizePolicy::Preferred);
}

void ElidedLabel::setFullText(const QString& text)
{
    full_ = text;
    setToolTip(text);
    elide();
}

void ElidedLabel::resizeEvent(QResizeEvent* event)
{
    QLabel::resizeEvent(event);
    elide();
}

void ElidedLabel::elide()
{
    setText(fontMetrics().elidedText(full_, Qt::ElideRight, std::max(0, width() - 4)));
}

PanelView::PanelView(QWidget* parent) : QGraphicsView(parent), item_(scene_.addPixmap(QPixmap()))
{
    setScene(&scene_);
    setDragMode(QGraphicsView::ScrollHandDrag);
    setTransformationAnchor(QGraphicsView::NoAnchor);
    setBackgroundBrush(QColor(40, 40, 40));
    setMinimumSize(160, 160);
    item_->setTransformationMode(Qt::FastTransformation);  // show pixels as they are when zoomed in
}

void PanelView::setImage(const QImage& image)
{
    image_ = image;
    item_->setPixmap(QPixmap::fromImage(image));
    scene_.setSceneRect(QRectF(QPointF(0, 0), QSizeF(image.size())));
}

void PanelView::wheelEvent(QWheelEvent* event)
{
    const double factor = event->angleDelta().y() > 0 ? 1.25 : 0.8;
    emit zoomRequested(factor, event->position().toPoint());
    event->accept();
}

void PanelView::mousePressEvent(QMouseEvent* event)
{
    pressPos_ = event->pos();
    QGraphicsView::mousePressEvent(event);
}

void PanelView::mouseReleaseEvent(QMouseEvent* event)
{
    QGraphicsView::mouseReleaseEvent(event);
    if (event->button() == Qt::LeftButton && (event->pos() - pressPos_).manhattanLength() < 4)
    {
        const QPointF p = mapToScene(event->pos());
        if (!image_.isNull() && QRectF(image_.rect()).contains(p))
            emit pixelClicked(QPoint(static_cast<int>(p.x()), static_cast<int>(p.y())));
    }
}

void ViewSync::add(PanelView* view)
{
    views_.append(view);
    connect(view, &PanelView::zoomRequested, this,
            [this, view](double factor, QPoint anchor) { zoom(factor, view, anchor); });
    auto follow = [this, view] { mirrorScroll(view); };
    connect(view->horizontalScrollBar(), &QScrollBar::valueChanged, this, follow);
    connect(view->verticalScrollBar(), &QScrollBar::valueChanged, this, follow);
}

double ViewSync::scale() const
{
    for (const auto& v : views_)
        if (v) return v->transform().m11();
    return 1;
}

void ViewSync::zoom(double factor, PanelView* source, QPoint anchor)
{
    const double next = std::clamp(scale() * factor, 0.05, 64.0);
    // Keep the scene point under the cursor fixed in the source view, then copy its scroll.
    const QPointF sceneAnchor = source->mapToScene(anchor);
    syncing_ = true;
    for (const auto& v : views_)
        if (v) v->setTransform(QTransform::fromScale(next, next));
    const QPointF moved = source->mapFromScene(sceneAnchor) - QPointF(anchor);
    source->horizontalScrollBar()->setValue(source->horizontalScrollBar()->value() + qRound(moved.x()));
    source->verticalScrollBar()->setValue(source->verticalScrollBar()->value() + qRound(moved.y()));
    syncing_ = false;
    mirrorScroll(source);
}

void ViewSync::fitAll()
{
    PanelView* first = nullptr;
    for (const auto& v : views_)
        if (v && v->isVisible() && !v->image().isNull()) first = first ? first : v.data();
    if (!first) return;
    first->fitInView(first->sceneRect(), Qt::KeepAspectRatio);
    const double s = first->transform().m11();
    syncing_ = true;
    for (const auto& v : views_)
        if (v) v->setTransform(QTransform::fromScale(s, s));
    syncing_ = false;
    mirrorScroll(first);
}

void ViewSync::mirrorScroll(PanelView* source)
{
    if (syncing_) return;
    syncing_ = true;
    for (const auto& v : views_)
        if (v && v != source)
        {
            v->horizontalScrollBar()->setValue(source->horizontalScrollBar()->value());
            v->verticalScrollBar()->setValue(source->verticalScrollBar()->value());
        }
    syncing_ = false;
}
